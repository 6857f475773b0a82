"""The SQLite catalog's schema: one tuple of statements per schema version.

Kept apart from :mod:`coordinator.catalog.sqlite` (the queries) because it only ever
grows: never edit a released entry, append one. ``migrate`` applies the versions a
catalog has not seen yet, in order, and records each in ``schema_version``.
"""

from __future__ import annotations


def summary_triggers(summary: str, rows: str) -> tuple[str, str]:
    """The triggers that keep ``summary`` (one row per (dataset, target) of ``rows``:
    count, bytes, newest backup) current; the same statements as written out before, for
    ``target_summary`` over ``backups`` (migration 2) and ``copy_summary`` over
    ``backup_copies`` (migration 5)."""
    return (
        f"""CREATE TRIGGER {rows}_summary_insert AFTER INSERT ON {rows} BEGIN
            INSERT INTO {summary} VALUES
                (NEW.dataset, NEW.target, NEW.backup_id, NEW.finished_at, 1, NEW.bytes_stored)
            ON CONFLICT (dataset, target) DO UPDATE SET
                backups = backups + 1,
                bytes_stored = bytes_stored + excluded.bytes_stored,
                backup_id = CASE WHEN (excluded.finished_at, excluded.backup_id)
                    > (finished_at, backup_id) THEN excluded.backup_id ELSE backup_id END,
                finished_at = max(finished_at, excluded.finished_at);
        END""",
        f"""CREATE TRIGGER {rows}_summary_delete AFTER DELETE ON {rows} BEGIN
            UPDATE {summary} SET backups = backups - 1,
                bytes_stored = bytes_stored - OLD.bytes_stored
                WHERE dataset = OLD.dataset AND target = OLD.target;
            DELETE FROM {summary}
                WHERE dataset = OLD.dataset AND target = OLD.target AND backups <= 0;
            UPDATE {summary} SET (backup_id, finished_at) = (
                SELECT backup_id, finished_at FROM {rows}
                WHERE dataset = OLD.dataset AND target = OLD.target
                ORDER BY finished_at DESC, backup_id DESC LIMIT 1)
                WHERE dataset = OLD.dataset AND target = OLD.target
                  AND backup_id = OLD.backup_id;
        END""",
    )


# Each entry is one schema version (index + 1); never edit a released entry, append one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            job_id text PRIMARY KEY, job_kind text NOT NULL, dataset text NOT NULL,
            agent text NOT NULL, target text NOT NULL, status text NOT NULL
                CHECK (status IN ('dispatched', 'running', 'completed', 'failed')),
            requested_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
            backup_id text, error_code text, error_message text)""",
        """CREATE INDEX jobs_failed_by_updated
            ON jobs (updated_at DESC, job_id DESC) WHERE status = 'failed'""",
        """CREATE INDEX jobs_failed_by_dataset_updated
            ON jobs (dataset, updated_at DESC, job_id DESC) WHERE status = 'failed'""",
        """CREATE TABLE backups (
            backup_id text PRIMARY KEY, dataset text NOT NULL, agent text NOT NULL,
            target text NOT NULL, repository_id text NOT NULL, backup_type text NOT NULL
                CHECK (backup_type IN ('full', 'incremental')),
            started_at INTEGER NOT NULL, finished_at INTEGER NOT NULL,
            files INTEGER NOT NULL, bytes_read INTEGER NOT NULL, bytes_new INTEGER NOT NULL,
            bytes_stored INTEGER NOT NULL, duration_s REAL NOT NULL)""",
        "CREATE INDEX backups_by_finished ON backups (finished_at DESC, backup_id DESC)",
        """CREATE INDEX backups_by_dataset_finished
            ON backups (dataset, finished_at DESC, backup_id DESC)""",
    ),
    # 2: status at scale — one summary row per (dataset, target), kept by triggers.
    (
        """CREATE INDEX backups_by_dataset_target_finished
            ON backups (dataset, target, finished_at DESC, backup_id DESC)""",
        """CREATE TABLE target_summary (
            dataset text NOT NULL, target text NOT NULL, backup_id text NOT NULL,
            finished_at INTEGER NOT NULL, backups INTEGER NOT NULL,
            bytes_stored INTEGER NOT NULL, PRIMARY KEY (dataset, target))""",
        """INSERT INTO target_summary
            SELECT dataset, target,
                (SELECT b.backup_id FROM backups b
                 WHERE b.dataset = g.dataset AND b.target = g.target
                 ORDER BY b.finished_at DESC, b.backup_id DESC LIMIT 1),
                max(finished_at), count(*), sum(bytes_stored)
            FROM backups g GROUP BY dataset, target""",
        *summary_triggers("target_summary", "backups"),
    ),
    # 3: the audit trail, append-only (triggers refuse UPDATE and DELETE)
    (
        """CREATE TABLE audit (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, entry_id text NOT NULL UNIQUE,
            at INTEGER NOT NULL, action text NOT NULL, actor text NOT NULL,
            dataset text, backup_id text, job_id text, detail text NOT NULL)""",
        """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit table is append-only: UPDATE refused'); END""",
        """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit table is append-only: DELETE refused'); END""",
    ),
    # 4: maintenance results (verify, prune, replicate) and restore drills
    (
        """CREATE TABLE maintenance (
            job_id text PRIMARY KEY, kind text NOT NULL, agent text NOT NULL,
            target text NOT NULL, dataset text NOT NULL, backup_id text,
            outcome text NOT NULL CHECK (outcome IN ('passed', 'failed')),
            started_at INTEGER NOT NULL, finished_at INTEGER NOT NULL,
            rto_s REAL, rpo_s REAL, summary text NOT NULL, detail text NOT NULL)""",
        """CREATE INDEX maintenance_by_kind_finished
            ON maintenance (kind, finished_at DESC, job_id DESC)""",
        """CREATE INDEX maintenance_by_dataset_kind_finished
            ON maintenance (dataset, kind, finished_at DESC, job_id DESC)""",
    ),
    # 5: a backup's retention tier (NULL on older rows: retention reads the backup id),
    # and replicated copies (see postgres.py), summarised per (dataset, target)
    (
        """ALTER TABLE backups ADD COLUMN tier text CHECK (tier IN
            ('daily', 'weekly', 'monthly', 'yearly', 'config', 'translog'))""",
        """CREATE TABLE backup_copies (
            backup_id text NOT NULL, target text NOT NULL, dataset text NOT NULL,
            tier text, finished_at INTEGER NOT NULL, bytes_stored INTEGER NOT NULL,
            copied_at INTEGER NOT NULL, PRIMARY KEY (backup_id, target))""",
        """CREATE INDEX backup_copies_by_dataset_target_finished
            ON backup_copies (dataset, target, finished_at DESC, backup_id DESC)""",
        """CREATE TABLE copy_summary (
            dataset text NOT NULL, target text NOT NULL, backup_id text NOT NULL,
            finished_at INTEGER NOT NULL, backups INTEGER NOT NULL,
            bytes_stored INTEGER NOT NULL, PRIMARY KEY (dataset, target))""",
        *summary_triggers("copy_summary", "backup_copies"),
    ),
    # 6: when each dataset first appeared (the scheduler never runs a time before it;
    # a dataset without a backup is pending until its first due time plus grace). An
    # upgraded catalog takes each dataset's oldest job or backup.
    (
        """CREATE TABLE datasets_seen (
            dataset text PRIMARY KEY, first_seen INTEGER NOT NULL)""",
        """INSERT INTO datasets_seen (dataset, first_seen)
            SELECT dataset, min(at) FROM (
                SELECT dataset, requested_at AS at FROM jobs
                UNION ALL SELECT dataset, started_at FROM backups)
            GROUP BY dataset""",
    ),
    # 7: access control (coordinator/auth/): local users, their recovery codes, API
    # tokens, console sessions, login failures. No secret in clear (hashes only; the
    # TOTP seed excepted, see docs/security.md).
    (
        """CREATE TABLE auth_users (
            name text PRIMARY KEY, role text NOT NULL
                CHECK (role IN ('viewer', 'operator', 'admin')),
            password_hash text NOT NULL, totp_secret text, totp_last_step INTEGER,
            disabled INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL, last_login_at INTEGER)""",
        """CREATE TABLE auth_recovery_codes (
            user_name text NOT NULL, code_hash text NOT NULL, used_at INTEGER,
            PRIMARY KEY (user_name, code_hash))""",
        """CREATE TABLE auth_tokens (
            token_id text PRIMARY KEY, name text NOT NULL, role text NOT NULL
                CHECK (role IN ('viewer', 'operator', 'admin')),
            secret_hash text NOT NULL, created_by text NOT NULL, created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL, revoked_at INTEGER, last_used_at INTEGER)""",
        """CREATE UNIQUE INDEX auth_tokens_active_name
            ON auth_tokens (name) WHERE revoked_at IS NULL""",
        """CREATE TABLE auth_sessions (
            session_hash text PRIMARY KEY, user_name text NOT NULL, csrf_token text NOT NULL,
            source text NOT NULL, created_at INTEGER NOT NULL, last_seen_at INTEGER NOT NULL)""",
        """CREATE INDEX auth_sessions_by_user ON auth_sessions (user_name)""",
        """CREATE TABLE auth_login_failures (
            key text PRIMARY KEY, failures INTEGER NOT NULL, first_at INTEGER NOT NULL,
            locked_until INTEGER)""",
    ),
)
