-- marcador schema, PostgreSQL flavour.

CREATE TABLE users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      TEXT    NOT NULL,
    email         TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    first_name    TEXT,
    last_name     TEXT,
    role          TEXT    NOT NULL CHECK (role IN ('admin', 'user')),
    is_active     BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE groups (
    id                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                  TEXT    NOT NULL,
    description           TEXT,
    prompt                TEXT,
    color                 TEXT    NOT NULL DEFAULT '#3B82F6',
    favorite              BOOLEAN NOT NULL DEFAULT FALSE,
    idioma                TEXT    NOT NULL DEFAULT 'es',
    variables             JSONB   NOT NULL DEFAULT '{}',
    prefix                TEXT    NOT NULL DEFAULT '+57',
    selected_country_code TEXT    NOT NULL DEFAULT 'CO',
    first_message         TEXT,
    phone_number_id       TEXT,
    agent_id              TEXT,
    timezone              TEXT    NOT NULL DEFAULT 'America/Bogota',
    created_by            BIGINT NOT NULL REFERENCES users (id),
    -- the double-launch guard: a launch holds the group until this instant
    launch_locked_until   TIMESTAMPTZ,
    deleted_at            TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX groups_owner_name_key ON groups (created_by, lower(name)) WHERE deleted_at IS NULL;
CREATE INDEX groups_created_at_idx ON groups (created_at);

CREATE TABLE clients (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_id    BIGINT NOT NULL REFERENCES groups (id),
    external_id TEXT,
    name        TEXT,
    phone       TEXT    NOT NULL,
    phone_e164  TEXT    NOT NULL,
    email       TEXT,
    address     TEXT,
    category    TEXT,
    status      TEXT    NOT NULL DEFAULT 'pending',
    variables   JSONB   NOT NULL DEFAULT '{}',
    deleted_at  TIMESTAMPTZ,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX clients_group_phone_key ON clients (group_id, phone_e164) WHERE deleted_at IS NULL;
CREATE INDEX clients_group_status_idx ON clients (group_id, status);

CREATE TABLE batches (
    id                     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- NULL while the submit's outcome is unknown (timeout), filled by the sync
    elevenlabs_batch_id    TEXT UNIQUE,
    group_id               BIGINT NOT NULL REFERENCES groups (id),
    created_by             BIGINT NOT NULL REFERENCES users (id),
    agent_id               TEXT    NOT NULL,
    phone_number_id        TEXT,
    name                   TEXT    NOT NULL,
    status                 TEXT    NOT NULL,
    submit_state           TEXT    NOT NULL DEFAULT 'submitted',
    part_index             BIGINT NOT NULL DEFAULT 1,
    part_count             BIGINT NOT NULL DEFAULT 1,
    launch_key             TEXT,
    scheduled_time_unix    BIGINT,
    created_at_unix        BIGINT,
    last_updated_at_unix   BIGINT,
    total_calls_scheduled  BIGINT NOT NULL DEFAULT 0,
    total_calls_dispatched BIGINT NOT NULL DEFAULT 0,
    total_calls_finished   BIGINT NOT NULL DEFAULT 0,
    raw                    JSONB   NOT NULL DEFAULT '{}',
    is_final               BOOLEAN NOT NULL DEFAULT FALSE,
    lease_owner            TEXT,
    lease_expires_at       TIMESTAMPTZ,
    next_sync_at           TIMESTAMPTZ,
    sync_failures          BIGINT NOT NULL DEFAULT 0,
    last_synced_at         TIMESTAMPTZ,
    created_at             TIMESTAMPTZ NOT NULL,
    updated_at             TIMESTAMPTZ NOT NULL
);
CREATE INDEX batches_group_created_idx ON batches (group_id, created_at);
CREATE INDEX batches_status_idx ON batches (status);
CREATE INDEX batches_pending_sync_idx ON batches (is_final, next_sync_at);

CREATE TABLE call_records (
    id                      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id                BIGINT NOT NULL REFERENCES batches (id),
    group_id                BIGINT NOT NULL REFERENCES groups (id),
    client_id               BIGINT REFERENCES clients (id),
    recipient_id            TEXT,
    phone_e164              TEXT    NOT NULL,
    status                  TEXT    NOT NULL DEFAULT 'pending',
    conversation_id         TEXT,
    duration_secs           BIGINT,
    call_successful         TEXT,
    transcript_summary      TEXT,
    termination_reason      TEXT,
    data_collection         JSONB,
    evaluation              JSONB,
    transcript              JSONB,
    failure_reason          TEXT,
    started_at              TIMESTAMPTZ,
    ended_at                TIMESTAMPTZ,
    conversation_fetched_at TIMESTAMPTZ,
    created_at              TIMESTAMPTZ NOT NULL,
    updated_at              TIMESTAMPTZ NOT NULL
);
CREATE INDEX call_records_batch_status_idx ON call_records (batch_id, status);
CREATE INDEX call_records_group_created_idx ON call_records (group_id, created_at);
CREATE INDEX call_records_group_status_idx ON call_records (group_id, status);
CREATE INDEX call_records_conversation_idx ON call_records (conversation_id);
CREATE INDEX call_records_recipient_idx ON call_records (recipient_id);
CREATE INDEX call_records_client_idx ON call_records (client_id);

CREATE TABLE idempotency_keys (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       BIGINT NOT NULL REFERENCES users (id),
    key           TEXT    NOT NULL,
    request_hash  TEXT    NOT NULL,
    status_code   BIGINT,
    response_body TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX idempotency_keys_user_key ON idempotency_keys (user_id, key);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

CREATE TABLE do_not_call (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    phone_e164 TEXT    NOT NULL UNIQUE,
    reason     TEXT,
    created_by BIGINT REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE webhook_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_key   TEXT    NOT NULL UNIQUE,
    event_type  TEXT    NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE audit_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     BIGINT REFERENCES users (id),
    action      TEXT    NOT NULL,
    entity_type TEXT    NOT NULL,
    entity_id   TEXT,
    details     JSONB   NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX audit_events_created_idx ON audit_events (created_at);
CREATE INDEX audit_events_entity_idx ON audit_events (entity_type, entity_id);
