"""The PostgreSQL catalog's schema: one tuple of statements per schema version.

Kept apart from :mod:`coordinator.catalog.postgres` (the queries) because it only ever
grows: never edit a released entry, append one. ``migrate`` applies the versions a
catalog has not seen yet, in order, and records each in ``schema_version``.
"""

from __future__ import annotations

# Re-exported for postgres.py, which is at the 500-line limit (see pg_auth.py).
from coordinator.catalog.pg_auth import PostgresAuthMixin as PostgresAuthMixin

# Recomputes target_summary from the backups (migration 2; bench/catalog_scale.py after
# a bulk load with the triggers disabled).
REBUILD_TARGET_SUMMARY = """INSERT INTO target_summary
    SELECT DISTINCT ON (dataset, target) dataset, target, backup_id, finished_at,
        count(*) OVER w, sum(bytes_stored) OVER w
    FROM backups
    WINDOW w AS (PARTITION BY dataset, target)
    ORDER BY dataset, target, finished_at DESC, backup_id DESC"""


def summary_table(summary: str, rows: str, *, rebuild: str | None = None) -> tuple[str, ...]:
    """``summary``: one row per (dataset, target) of ``rows`` (count, bytes, newest backup),
    kept by triggers so status never scans ``rows``. Same statements as written out
    before, for ``target_summary`` over ``backups`` (migration 2) and ``copy_summary``
    over ``backup_copies`` (migration 5); ``rebuild`` fills it from existing rows."""
    return (
        f"""CREATE TABLE {summary} (
            dataset text NOT NULL, target text NOT NULL, backup_id text NOT NULL,
            finished_at timestamptz NOT NULL, backups bigint NOT NULL,
            bytes_stored bigint NOT NULL, PRIMARY KEY (dataset, target))""",
        *((rebuild,) if rebuild else ()),
        f"""CREATE FUNCTION {summary}_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO {summary} AS s VALUES
                (NEW.dataset, NEW.target, NEW.backup_id, NEW.finished_at, 1, NEW.bytes_stored)
            ON CONFLICT (dataset, target) DO UPDATE SET
                backups = s.backups + 1,
                bytes_stored = s.bytes_stored + EXCLUDED.bytes_stored,
                backup_id = CASE WHEN (EXCLUDED.finished_at, EXCLUDED.backup_id)
                    > (s.finished_at, s.backup_id) THEN EXCLUDED.backup_id ELSE s.backup_id END,
                finished_at = GREATEST(s.finished_at, EXCLUDED.finished_at);
            RETURN NULL;
        END $$""",
        f"""CREATE FUNCTION {summary}_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE {summary} SET backups = backups - 1,
                bytes_stored = bytes_stored - OLD.bytes_stored
                WHERE dataset = OLD.dataset AND target = OLD.target;
            DELETE FROM {summary}
                WHERE dataset = OLD.dataset AND target = OLD.target AND backups <= 0;
            UPDATE {summary} s SET backup_id = b.backup_id, finished_at = b.finished_at
                FROM (SELECT backup_id, finished_at FROM {rows}
                      WHERE dataset = OLD.dataset AND target = OLD.target
                      ORDER BY finished_at DESC, backup_id DESC LIMIT 1) b
                WHERE s.dataset = OLD.dataset AND s.target = OLD.target
                  AND s.backup_id = OLD.backup_id;
            RETURN NULL;
        END $$""",
        f"""CREATE TRIGGER {rows}_summary_insert AFTER INSERT ON {rows}
            FOR EACH ROW EXECUTE FUNCTION {summary}_insert()""",
        f"""CREATE TRIGGER {rows}_summary_delete AFTER DELETE ON {rows}
            FOR EACH ROW EXECUTE FUNCTION {summary}_delete()""",
    )


# Each entry is one schema version (index + 1); never edit a released entry, append one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            job_id text PRIMARY KEY, job_kind text NOT NULL, dataset text NOT NULL,
            agent text NOT NULL, target text NOT NULL, status text NOT NULL
                CHECK (status IN ('dispatched', 'running', 'completed', 'failed')),
            requested_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
            backup_id text, error_code text, error_message text)""",
        """CREATE INDEX jobs_failed_by_updated
            ON jobs (updated_at DESC, job_id DESC) WHERE status = 'failed'""",
        """CREATE INDEX jobs_failed_by_dataset_updated
            ON jobs (dataset, updated_at DESC, job_id DESC) WHERE status = 'failed'""",
        """CREATE TABLE backups (
            backup_id text PRIMARY KEY, dataset text NOT NULL, agent text NOT NULL,
            target text NOT NULL, repository_id text NOT NULL, backup_type text NOT NULL
                CHECK (backup_type IN ('full', 'incremental')),
            started_at timestamptz NOT NULL, finished_at timestamptz NOT NULL,
            files bigint NOT NULL, bytes_read bigint NOT NULL, bytes_new bigint NOT NULL,
            bytes_stored bigint NOT NULL, duration_s double precision NOT NULL)""",
        "CREATE INDEX backups_by_finished ON backups (finished_at DESC, backup_id DESC)",
        """CREATE INDEX backups_by_dataset_finished
            ON backups (dataset, finished_at DESC, backup_id DESC)""",
    ),
    # 2: status at scale — one summary row per (dataset, target), kept by triggers.
    (
        """CREATE INDEX backups_by_dataset_target_finished
            ON backups (dataset, target, finished_at DESC, backup_id DESC)""",
        *summary_table("target_summary", "backups", rebuild=REBUILD_TARGET_SUMMARY),
    ),
    # 3: the audit trail, append-only (triggers refuse UPDATE and DELETE)
    (
        """CREATE TABLE audit (
            seq bigserial PRIMARY KEY, entry_id text NOT NULL UNIQUE,
            at timestamptz NOT NULL, action text NOT NULL, actor text NOT NULL,
            dataset text, backup_id text, job_id text, detail text NOT NULL)""",
        """CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the audit table is append-only: % refused', TG_OP;
        END $$""",
        """CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
            FOR EACH ROW EXECUTE FUNCTION audit_append_only()""",
        """CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
            FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""",
    ),
    # 4: maintenance results (verify, prune, replicate) and restore drills
    (
        """CREATE TABLE maintenance (
            job_id text PRIMARY KEY, kind text NOT NULL, agent text NOT NULL,
            target text NOT NULL, dataset text NOT NULL, backup_id text,
            outcome text NOT NULL CHECK (outcome IN ('passed', 'failed')),
            started_at timestamptz NOT NULL, finished_at timestamptz NOT NULL,
            rto_s double precision, rpo_s double precision,
            summary text NOT NULL, detail text NOT NULL)""",
        """CREATE INDEX maintenance_by_kind_finished
            ON maintenance (kind, finished_at DESC, job_id DESC)""",
        """CREATE INDEX maintenance_by_dataset_kind_finished
            ON maintenance (dataset, kind, finished_at DESC, job_id DESC)""",
    ),
    # 5: a backup's retention tier (NULL on older rows: retention reads the backup id),
    # and replicated copies: one row per backup × replica target (backups is keyed by
    # backup_id alone, the primary copy), summarised per (dataset, target) by triggers
    # like target_summary so status reads a few thousand rows.
    (
        """ALTER TABLE backups ADD COLUMN tier text CHECK (tier IN
            ('daily', 'weekly', 'monthly', 'yearly', 'config', 'translog'))""",
        """CREATE TABLE backup_copies (
            backup_id text NOT NULL, target text NOT NULL, dataset text NOT NULL,
            tier text, finished_at timestamptz NOT NULL, bytes_stored bigint NOT NULL,
            copied_at timestamptz NOT NULL, PRIMARY KEY (backup_id, target))""",
        """CREATE INDEX backup_copies_by_dataset_target_finished
            ON backup_copies (dataset, target, finished_at DESC, backup_id DESC)""",
        *summary_table("copy_summary", "backup_copies"),
    ),
    # 6: when each dataset first appeared (see sqlite_schema.py); an upgraded catalog
    # takes each dataset's oldest job or backup.
    (
        """CREATE TABLE datasets_seen (
            dataset text PRIMARY KEY, first_seen timestamptz NOT NULL)""",
        """INSERT INTO datasets_seen (dataset, first_seen)
            SELECT dataset, min(at) FROM (
                SELECT dataset, requested_at AS at FROM jobs
                UNION ALL SELECT dataset, started_at FROM backups) AS a
            GROUP BY dataset""",
    ),
    # 7: access control (coordinator/auth/): local users, their recovery codes, API
    # tokens, console sessions, login failures. No secret in clear (hashes only; the
    # TOTP seed excepted, see docs/security.md).
    (
        """CREATE TABLE auth_users (
            name text PRIMARY KEY, role text NOT NULL
                CHECK (role IN ('viewer', 'operator', 'admin')),
            password_hash text NOT NULL, totp_secret text, totp_last_step bigint,
            disabled boolean NOT NULL DEFAULT false, created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL, last_login_at timestamptz)""",
        """CREATE TABLE auth_recovery_codes (
            user_name text NOT NULL, code_hash text NOT NULL, used_at timestamptz,
            PRIMARY KEY (user_name, code_hash))""",
        """CREATE TABLE auth_tokens (
            token_id text PRIMARY KEY, name text NOT NULL, role text NOT NULL
                CHECK (role IN ('viewer', 'operator', 'admin')),
            secret_hash text NOT NULL, created_by text NOT NULL, created_at timestamptz NOT NULL,
            expires_at timestamptz NOT NULL, revoked_at timestamptz, last_used_at timestamptz)""",
        """CREATE UNIQUE INDEX auth_tokens_active_name
            ON auth_tokens (name) WHERE revoked_at IS NULL""",
        """CREATE TABLE auth_sessions (
            session_hash text PRIMARY KEY, user_name text NOT NULL, csrf_token text NOT NULL,
            source text NOT NULL, created_at timestamptz NOT NULL,
            last_seen_at timestamptz NOT NULL)""",
        """CREATE INDEX auth_sessions_by_user ON auth_sessions (user_name)""",
        """CREATE TABLE auth_login_failures (
            key text PRIMARY KEY, failures integer NOT NULL, first_at timestamptz NOT NULL,
            locked_until timestamptz)""",
    ),
)

# Record the datasets not seen yet (at %s) and return every one's first appearance: the
# main query does not see the rows its CTE inserts, hence the UNION.
DATASETS_SEEN = """WITH new AS (
        INSERT INTO datasets_seen (dataset, first_seen) SELECT unnest(%s::text[]), %s
        ON CONFLICT (dataset) DO NOTHING RETURNING dataset, first_seen)
    SELECT dataset, first_seen FROM new
    UNION ALL SELECT dataset, first_seen FROM datasets_seen WHERE dataset = ANY(%s)"""
