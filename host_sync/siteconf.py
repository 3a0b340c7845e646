"""This host's site set-up (`host-sync site init`): the site CA and the broker's certificate
(host_sync/pki.py), the mosquitto config with every account of the registry, and site.json
recording what readers are told (the broker's address and port) so later commands (readers
config, serve, services) take it from there instead of flags.

Ownership: mosquitto started as root drops to its own user (`mosquitto`), so as root the
broker's files are root:mosquitto 0640 in a 0750 folder and its persistence folder belongs to
`mosquitto`; as a plain user they are that user's, and the config names that user, so the same
files work whichever of the two starts it. The CA key is readable by its owner only.
"""
from __future__ import annotations

import getpass
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from host_sync import broker, paths, pki
from host_sync.pki import SitePki

SITE_FILE = "site.json"
MOSQUITTO_USER = "mosquitto"
BROKER_UNIT = "grindvakt-mosquitto.service"


class SiteError(ValueError):
    pass


def mosquitto_bin() -> str:
    for p in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if p and os.path.exists(p):
            return p
    raise SiteError("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)")


@dataclass
class SiteConf:
    names: list[str]  # what the server certificate is valid for (besides localhost)
    reader_host: str  # the broker address written into every reader's config
    port: int = 8883
    bind: list[str] | None = None  # None: every address of this host
    run_as: str | None = None  # who mosquitto runs as once started (root drops to it)
    # the host side's own listener (127.0.0.1, TLS): client ids there are not bound to
    # account names, so serve instances and tools can share the host account (docs/security.md)
    host_port: int | None = None
    data_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    dir: Path = field(default_factory=paths.config_dir, repr=False, compare=False)

    # -- files --
    @property
    def pki(self) -> SitePki:
        return SitePki(self.dir)

    @property
    def broker_dir(self) -> Path:
        return self.dir / "broker"

    @property
    def conf_path(self) -> Path:
        return self.broker_dir / "mosquitto.conf"

    @property
    def persistence_dir(self) -> Path:
        return Path(self.data_dir) / "broker"

    @property
    def trust(self) -> Path:
        return self.pki.trust_pem

    @classmethod
    def load(cls, config_dir: str | os.PathLike | None = None) -> "SiteConf | None":
        d = Path(config_dir) if config_dir else paths.config_dir()
        try:
            raw = json.loads((d / SITE_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise SiteError("cannot read %s: %s" % (d / SITE_FILE, e))
        known = {k: raw[k] for k in ("names", "reader_host", "port", "bind", "run_as", "data_dir",
                                     "host_port")
                 if k in raw}
        return cls(**known, extra={k: v for k, v in raw.items() if k not in known}, dir=d.resolve())

    def save(self) -> None:
        body = {k: v for k, v in asdict(self).items() if k not in ("dir", "extra")}
        body.update(self.extra)
        tmp = self.dir / (SITE_FILE + ".tmp")
        tmp.write_text(json.dumps(body, indent=1) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.dir / SITE_FILE)

    # -- who reads the broker's files --
    def owner(self) -> tuple[int | None, int | None]:
        """(uid, gid) to give the broker's files, or (None, None) to leave them ours."""
        if not paths.is_root() or not self.run_as or self.run_as == "root":
            return None, None
        pw = pwd.getpwnam(self.run_as)
        return pw.pw_uid, pw.pw_gid


def default_run_as() -> str | None:
    if paths.is_root():
        try:
            pwd.getpwnam(MOSQUITTO_USER)
            return MOSQUITTO_USER
        except KeyError:
            return None  # no such user: mosquitto then stays root (said by init)
    return getpass.getuser()


def default_names() -> list[str]:
    host = socket.gethostname()
    fqdn = socket.getfqdn()
    return list(dict.fromkeys(n for n in (fqdn, host) if n and n != "localhost"))


def init(names: Sequence[str], addresses: Sequence[str], bind: Sequence[str] | None,
         port: int, force: bool = False, host_port: int | None = None) -> SiteConf:
    """The CA (kept if there is one, unless force), a server certificate for names +
    addresses, site.json. The broker's config is written by write_broker (it needs the registry)."""
    if not 0 < port < 65536:
        raise SiteError("--port %d is outside 1-65535" % port)
    san = list(dict.fromkeys(list(addresses) + list(names))) or default_names()
    if not san:
        raise SiteError("give the address readers use to reach this host: --address IP")
    pki.split_names(san)  # a bad name is refused before anything is written
    for a in list(bind or []):
        broker.conf_text("/p", "/a", bind=a)  # raises BrokerConfigError naming a bad address
    if bind and not {"127.0.0.1", "0.0.0.0"} & set(bind):
        bind = list(bind) + ["127.0.0.1"]  # the host's own service and deploy connect there
    conf = SiteConf(names=san, reader_host=san[0], port=port, bind=list(bind) if bind else None,
                    run_as=default_run_as(), data_dir=str(paths.data_dir()),
                    host_port=host_port or (port + 1 if port < 65535 else port - 1))
    conf.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(conf.dir, 0o755)
    conf.pki.init(san, "grindvakt site CA (%s)" % socket.gethostname(), force=force)
    conf.save()
    return conf


def write_broker(conf: SiteConf, readers: Sequence[broker.ReaderAccount],
                 hosts: Sequence[broker.HostAccount]) -> broker.BrokerFiles:
    """mosquitto.conf, passwd and acl in the site's broker folder, readable by the broker's
    user, with the TLS listener(s) of site.json."""
    uid, gid = conf.owner()
    pki = conf.pki
    tls = broker.TlsFiles(str(pki.trust_pem), str(pki.server_pem), str(pki.server_key))
    conf.broker_dir.mkdir(parents=True, exist_ok=True)
    conf.persistence_dir.mkdir(parents=True, exist_ok=True)
    if gid is not None:
        os.chown(conf.broker_dir, 0, gid)
        os.chmod(conf.broker_dir, 0o750)
        os.chown(pki.server_key, 0, gid)
        os.chown(conf.persistence_dir, uid or 0, gid)
    else:
        os.chmod(conf.broker_dir, 0o700 if not paths.is_root() else 0o755)
    os.chmod(pki.server_key, 0o640 if gid is not None else 0o600)
    os.chmod(conf.persistence_dir, 0o750 if gid is not None else 0o700)
    return broker.write_config(conf.broker_dir, readers, hosts, port=conf.port, tls=tls,
                               bind=conf.bind, persistence_dir=str(conf.persistence_dir),
                               host_port=conf.host_port,
                               run_as=conf.run_as, group=gid)


def broker_command(conf: SiteConf) -> list[str]:
    return [mosquitto_bin(), "-c", str(conf.conf_path)]


def systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system") and shutil.which("systemctl") is not None


def reload_broker(conf: SiteConf, restart: bool = False) -> str:
    """Make the running broker take its new accounts (SIGHUP) or certificate (restart). Returns
    what was done or what the operator should do."""
    if systemd_running():
        cmd = ["systemctl"] + ([] if paths.is_root() else ["--user"])
        active = subprocess.run(cmd + ["is-active", "--quiet", BROKER_UNIT]).returncode == 0
        if active:
            r = subprocess.run(cmd + ["restart" if restart else "reload", BROKER_UNIT],
                               capture_output=True, text=True)
            if r.returncode == 0:
                return "%s %sed" % (BROKER_UNIT, "restart" if restart else "reload")
            return "could not %s %s: %s" % ("restart" if restart else "reload", BROKER_UNIT,
                                            r.stderr.strip())
    pids = broker_pids(conf)
    if pids and not restart:
        for pid in pids:
            os.kill(pid, signal.SIGHUP)
        return "sent SIGHUP to mosquitto (pid %s): it rereads its accounts" % ", ".join(map(str, pids))
    if pids:
        return ("restart mosquitto (pid %s) to use the new certificate: readers reconnect by "
                "themselves" % ", ".join(map(str, pids)))
    return "no running broker with this config found (start it: %s)" % " ".join(broker_command(conf))


def broker_pids(conf: SiteConf) -> list[int]:
    """mosquitto processes started with exactly this config file (not any mosquitto)."""
    want = str(conf.conf_path)
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if args and os.path.basename(args[0]) == "mosquitto" and want in args:
            out.append(int(d.name))
    return out


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
