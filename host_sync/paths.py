"""Where this host keeps its files, found the same way from any folder and by every command:

    config_dir()  the site's CA, the broker's certificate and config, site.json
                  GV_CONFIG_DIR, else /etc/grindvakt as root, else $XDG_CONFIG_HOME/grindvakt
                  (~/.config/grindvakt)
    data_dir()    the registry (SQLite) and the broker's persistence
                  GV_DATA, else /var/lib/grindvakt as root, else $XDG_DATA_HOME/grindvakt
                  (~/.local/share/grindvakt)
    unit_dir()    systemd units: GV_UNIT_DIR, else /etc/systemd/system as root, else
                  ~/.config/systemd/user

Nothing depends on the current folder: a command run from another folder finds the same
registry (the first wave's default, ./data, made a new empty one wherever it was run).
"""
from __future__ import annotations

import os
from pathlib import Path

APP = "grindvakt"


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _xdg(var: str, fallback: str) -> Path:
    v = os.environ.get(var)
    if v and os.path.isabs(v):
        return Path(v)
    return Path.home() / fallback


def config_dir() -> Path:
    v = os.environ.get("GV_CONFIG_DIR")
    if v:
        return Path(v).resolve()
    if is_root():
        return Path("/etc") / APP
    return _xdg("XDG_CONFIG_HOME", ".config") / APP


def data_dir() -> Path:
    v = os.environ.get("GV_DATA")
    if v:
        return Path(v).resolve()
    if is_root():
        return Path("/var/lib") / APP
    return _xdg("XDG_DATA_HOME", ".local/share") / APP


def unit_dir() -> Path:
    v = os.environ.get("GV_UNIT_DIR")  # a staging folder (packaging, tests)
    if v:
        return Path(v).resolve()
    if is_root():
        return Path("/etc/systemd/system")
    return _xdg("XDG_CONFIG_HOME", ".config") / "systemd" / "user"
