-- Run once by the postgres image when its data volume is new: Prefect's own database, next to
-- ASCOB's ("ascob", created from POSTGRES_DB). Both belong to POSTGRES_USER.
CREATE DATABASE prefect;
