"""Where the keys that seal credentials come from: the config (or its ${ENV}), else a key file."""

from __future__ import annotations

import logging

from gateway.config import SecretsConfig
from store import FixedKeys, KeyFile, Keyring, Sealer, key_id_for, load_or_create_keyring

logger = logging.getLogger(__name__)


def sealer_for(config: SecretsConfig) -> Sealer:
    """The sealer the store uses; creates the key file on first run (and says so, loudly)."""
    if config.key is not None:
        keys = {key_id_for(key): key for key in (config.key, *config.previous_keys)}
        return Sealer(FixedKeys(Keyring(keys, key_id_for(config.key))))
    _, created = load_or_create_keyring(config.key_file)
    if created:
        logger.warning(
            "created %s, the key that encrypts stored credentials. Back it up, and keep that backup "
            "apart from the database's: without the key they cannot be read; with it and the "
            "database, anyone can read them. Set secrets.key (from the environment) to keep the "
            "key elsewhere.",
            config.key_file,
        )
    return Sealer(KeyFile(config.key_file))
