-- Checkpoints of the pipeline's state holders (router and detector shards), written at each
-- barrier. A barrier is complete once its 'router' row exists (the router writes it last);
-- recovery restores every holder to the latest complete barrier and replays the stream
-- entries after its position. created_at: INTEGER microseconds since the Unix epoch (UTC).
CREATE TABLE checkpoints (
    pipeline    TEXT NOT NULL,
    owner       TEXT NOT NULL,
    barrier     INTEGER NOT NULL CHECK (barrier > 0),
    position    INTEGER NOT NULL CHECK (position >= 0),
    state       BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (pipeline, owner, barrier)
);
