"""Where a search's Optuna study lives: an Optuna RDB storage, under the search's name. By default the SQLite file
`optuna.db` in the search's folder; with `--optuna-storage URL` a database server's (on a cluster, a PostgreSQL
database of its own beside MLflow's: docs/cluster.md). The URL is kept in the search's settings (search.json), so a
resumed search and a later --warm-start find the study. Ray's OptunaSearch takes the storage and the study name as
they are, so every trial Optuna is told about (with the intermediate values of pruned ones) is there, and

    optuna-dashboard sqlite:///<search folder>/optuna.db      (or the --optuna-storage URL)

or `optuna.load_study(study_name=<search name>, storage=...)` shows the study while it runs and after.
"""

from __future__ import annotations

from pathlib import Path

import optuna

from tuner.errors import SetupError, one_line

STUDY_FILE = "optuna.db"
DIALECTS = ("sqlite", "postgresql", "mysql")  # the databases Optuna's RDBStorage is tested on
CONNECT_TIMEOUT_S = 10


def storage_url(folder: Path, url: str | None = None) -> str:
    """The study's storage: `url` when the search was given one, else optuna.db in its folder."""
    return url or f"sqlite:///{Path(folder).resolve() / STUDY_FILE}"


def open_storage(folder: Path, url: str | None = None) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(storage_url(folder, url))


def fresh_study_storage(folder: Path, study_name: str, url: str | None = None) -> optuna.storages.RDBStorage:
    """The storage for a search that starts (or starts anew after its driver died before any trial was saved): a
    study left under the same name holds trials Ray will not report on, so it is deleted first."""
    storage = open_storage(folder, url)
    if any(summary.study_name == study_name for summary in optuna.get_all_study_summaries(storage)):
        optuna.delete_study(study_name=study_name, storage=storage)
    return storage


def shown_url(url: str) -> str:
    """The URL as printed: its password masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads; check_storage_url says so
        return url


def check_storage_url(url: str) -> None:
    """Refuse, in one line and before anything is created, a --optuna-storage URL that is no database Optuna can
    keep a study in, or a server that cannot be reached. A SQLite file is made when the search starts."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    flag = f"--optuna-storage {shown_url(url)}"
    try:
        parsed = make_url(url)
    except Exception:
        raise SetupError(f"{flag}: not a database URL (e.g. postgresql://USER:PASSWORD@HOST:5432/optuna)") from None
    if parsed.get_backend_name() not in DIALECTS:
        raise SetupError(f"{flag}: Optuna keeps studies in {', '.join(DIALECTS)} databases; not in {parsed.drivername}")
    if parsed.get_backend_name() == "sqlite":
        database = Path(parsed.database or "")
        if not parsed.database or not database.resolve().parent.is_dir():
            raise SetupError(f"{flag}: no folder {database.resolve().parent} for the SQLite file")
        return
    timeout = {"connect_timeout": CONNECT_TIMEOUT_S} if parsed.get_backend_name() in ("postgresql", "mysql") else {}
    try:
        engine = create_engine(parsed, connect_args=timeout)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as error:  # a missing driver, a wrong host, password or database: the user needs one line
        raise SetupError(f"{flag}: cannot connect ({one_line(error)})") from None


def dashboard_command(folder: Path, url: str | None = None) -> str:
    return f"optuna-dashboard {shown_url(storage_url(folder, url))}"
