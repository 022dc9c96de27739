-- Runs once, when the PostgreSQL volume is first created: one database per server.
-- Prefect's server needs trigram indexes (pg_trgm) for its search.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
