-- Paging snapshots are a cache of search results (30 minutes): they need no WAL. An UNLOGGED table is
-- emptied after a PostgreSQL crash and is not copied to standbys; an open `next` link then answers
-- "expired" and the client searches again. Each search that pages saved one WAL-logged, fsynced row.
ALTER TABLE search_snapshots SET UNLOGGED;
