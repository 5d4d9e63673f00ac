-- Per-queue controls: pause, concurrency limit, rate limit. A queue without a row has none.
CREATE TABLE queue_settings (
    queue_name       text PRIMARY KEY,
    paused           boolean NOT NULL DEFAULT false,
    max_concurrency  integer NOT NULL DEFAULT 0 CHECK (max_concurrency >= 0),
    rate_per_second  double precision NOT NULL DEFAULT 0 CHECK (rate_per_second >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
