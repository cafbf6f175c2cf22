"""Fixtures for the Ansible tests: the bare-host image, fresh booting hosts, the packed bundle."""

from ansible_testhost import (  # noqa: F401 - pytest finds fixtures by name in conftest
    bundle_archive,
    new_testhost,
    ssh_key,
    testhost_image,
)
