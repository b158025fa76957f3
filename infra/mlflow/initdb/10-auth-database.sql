-- The basic-auth user store gets a database of its own (its schema migrations are separate
-- from the tracking store's). Runs once, when the PostgreSQL volume is first initialised.
CREATE DATABASE mlflow_auth OWNER mlflow;
