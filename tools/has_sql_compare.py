"""The `_has` statement before and after the per-patient index by code (session 13), side by side on one
SQLite file: `python3 tools/has_sql_compare.py [target/bench-data/kindling.db]` after `kindling bench`."""
import sqlite3, time, statistics
import sys
path = sys.argv[1] if len(sys.argv) > 1 else 'target/bench-data/kindling.db'
con = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
codes = ['4548-4','2339-0','8302-2','72166-2','2093-3','39156-5']
old = """SELECT t.rid FROM resources t WHERE t.res_type = 'Patient' AND t.deleted = 0 AND t.id IN (
  SELECT x.target_id FROM sp_reference x WHERE x.p = 'Observation.subject' AND x.target_type = 'Patient'
   AND x.rid IN (SELECT rid FROM sp_token WHERE p = 'Observation.code' AND ((code = ? AND system = 'http://loinc.org'))))"""
new = """SELECT t.rid FROM resources t WHERE t.res_type = 'Patient' AND t.deleted = 0 AND t.id IN (
  SELECT z.patient_id FROM sp_token_patient z WHERE z.p = 'Observation.code' AND ((code = ? AND system = 'http://loinc.org'))
   AND z.via LIKE '%,Observation.subject,%')"""
for c in codes:
    res = {}
    for name, q in (('old', old), ('new', new)):
        rows = con.execute(q, (c,)).fetchall()
        ts = []
        for _ in range(15):
            t = time.perf_counter(); con.execute(q, (c,)).fetchall(); ts.append((time.perf_counter() - t) * 1000)
        res[name] = (len(rows), statistics.median(ts))
    obs = con.execute("SELECT count(*) FROM sp_token WHERE p='Observation.code' AND code=? AND system='http://loinc.org'", (c,)).fetchone()[0]
    assert res['old'][0] == res['new'][0], (c, res)
    print(f"{c:8} observations={obs:5} patients={res['new'][0]:4}  old={res['old'][1]:6.2f} ms  new={res['new'][1]:5.2f} ms")
