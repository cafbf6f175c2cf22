"""Fixtures for the Ansible tests: the test host, its inventory, the packed bundle."""

from ansible_testhost import (  # noqa: F401 - pytest finds fixtures by name in conftest
    bundle_archive,
    host_inventory_dir,
    inventory,
    testhost,
    testhost_image,
)
