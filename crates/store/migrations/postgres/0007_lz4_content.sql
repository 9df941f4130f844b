-- Resource JSON larger than about 2 kB (claims, explanations of benefit, reports) is compressed by
-- PostgreSQL when stored. Its default method, pglz, was the largest single cost of PostgreSQL's CPU over
-- an import (4% of the machine); lz4 compresses and decompresses several times faster for 2% more space:
-- the Synthea set imported in a median 14.4 s instead of 16.5 s (three alternating runs each). New values
-- only; values already stored stay readable as they are. lz4 needs PostgreSQL 14 built with it (as the
-- Debian, Ubuntu and official container builds are); elsewhere the columns keep pglz.
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        BEGIN
            EXECUTE 'ALTER TABLE resources ALTER COLUMN content SET COMPRESSION lz4';
            EXECUTE 'ALTER TABLE resource_history ALTER COLUMN content SET COMPRESSION lz4';
        EXCEPTION WHEN feature_not_supported THEN
            RAISE NOTICE 'lz4 is not available on this server: resource JSON stays compressed with pglz';
        END;
    END IF;
END
$$;
