-- Checkpoints of the pipeline's state holders (router and detector shards), written at each
-- barrier. A barrier is complete once its 'router' row exists (the router writes it last);
-- recovery restores every holder to the latest complete barrier and replays the stream
-- entries after its position.
CREATE TABLE checkpoints (
    pipeline    TEXT NOT NULL,
    owner       TEXT NOT NULL,
    barrier     BIGINT NOT NULL CHECK (barrier > 0),
    position    BIGINT NOT NULL CHECK (position >= 0),
    state       BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, owner, barrier)
);
