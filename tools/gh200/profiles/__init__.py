"""Profiles: schema, loading, validation, locks and rendering."""

from gh200.profiles.loader import list_names, load_any, load_host, load_profile, load_stack
from gh200.profiles.locks import all_pins, image_pin, lock_state, model_pins, require_locked
from gh200.profiles.render import container_spec, model_host_dir, model_store, profile_hash
from gh200.profiles.schema import Expected, HostSpec, Profile, Stack
from gh200.profiles.validate import validate, validate_or_raise


def list_profiles() -> list[str]:
    """Names of every profile and stack in profiles/."""
    return list_names()


def resolved_model_revision(profile: Profile) -> str | None:
    """The commit sha models.lock holds for the profile's base model, or None when unlocked."""
    return model_pins(profile)[0].value


__all__ = [
    "Expected",
    "HostSpec",
    "Profile",
    "Stack",
    "all_pins",
    "container_spec",
    "image_pin",
    "list_names",
    "list_profiles",
    "load_any",
    "load_host",
    "load_profile",
    "load_stack",
    "lock_state",
    "model_host_dir",
    "model_pins",
    "model_store",
    "profile_hash",
    "require_locked",
    "resolved_model_revision",
    "validate",
    "validate_or_raise",
]
