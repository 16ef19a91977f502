"""The audit log's migrations as the shared migrator reads them: file names, order, the
service's own folder (applying them to a real database: tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit_log_service.settings import Settings
from taskevents.postgres import (
    MigrationError,
    load_migrations,
    order_migrations,
    packaged_migrations,
    parse_migration_filename,
    pending_migrations,
)

SERVICE_MIGRATIONS = Path(__file__).resolve().parents[2] / "audit-log-service" / "migrations"


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("0001_audit_events.sql", (1, "audit_events")),
        ("0042_add_index_2.sql", (42, "add_index_2")),
        ("10000_far_future.sql", (10000, "far_future")),
    ],
)
def test_a_migration_file_name_gives_version_and_name(
    filename: str, expected: tuple[int, str]
) -> None:
    assert parse_migration_filename(filename) == expected


@pytest.mark.parametrize(
    "filename",
    ["1_short.sql", "0001-dash.sql", "0001_Upper.sql", "0001_.sql", "0001_x.SQL", "audit.sql"],
)
def test_a_badly_named_migration_is_refused(filename: str) -> None:
    with pytest.raises(MigrationError, match=r"NNNN_description\.sql"):
        parse_migration_filename(filename)


def test_migrations_run_in_version_order_not_name_order() -> None:
    files = {
        "0010_ten.sql": "SELECT 10",
        "0002_two.sql": "SELECT 2",
        "10000_big.sql": "SELECT 10000",
        "0001_one.sql": "SELECT 1",
    }

    migrations = order_migrations(files)

    assert [m.version for m in migrations] == [1, 2, 10, 10000]
    assert [m.sql for m in migrations] == ["SELECT 1", "SELECT 2", "SELECT 10", "SELECT 10000"]


def test_two_migrations_with_one_version_are_refused() -> None:
    with pytest.raises(MigrationError, match="two migrations with version 3"):
        order_migrations({"0003_a.sql": "", "00003_b.sql": ""})


def test_only_the_missing_migrations_are_pending() -> None:
    migrations = order_migrations({f"000{v}_m{v}.sql": "" for v in (1, 2, 3, 4)})

    pending = pending_migrations(migrations, applied_versions={1, 3})

    assert [m.version for m in pending] == [2, 4]


def test_discovery_reads_sql_files_and_ignores_the_rest(tmp_path: Path) -> None:
    (tmp_path / "0002_second.sql").write_text("CREATE TABLE b ();")
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE a ();")
    (tmp_path / "README.md").write_text("notes")

    migrations = load_migrations(tmp_path)

    assert [(m.version, m.name, m.sql) for m in migrations] == [
        (1, "first", "CREATE TABLE a ();"),
        (2, "second", "CREATE TABLE b ();"),
    ]


def test_an_empty_or_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="no migrations"):
        load_migrations(tmp_path)
    with pytest.raises(MigrationError, match="no migrations folder"):
        load_migrations(tmp_path / "missing")


def test_the_service_migrations_are_found_and_numbered_without_gaps() -> None:
    assert packaged_migrations("audit_log_service") == SERVICE_MIGRATIONS

    migrations = load_migrations(packaged_migrations("audit_log_service"))

    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert [m.name for m in migrations[:2]] == ["audit_events", "dead_letters"]


def test_the_migrations_folder_is_a_setting_defaulting_to_the_packaged_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings().migrations_dir == SERVICE_MIGRATIONS

    monkeypatch.setenv("AUDIT_MIGRATIONS_DIR", str(tmp_path))

    assert Settings().migrations_dir == tmp_path
