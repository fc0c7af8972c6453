"""The shared job table: Redis hashes and indexes, every change one Lua script (atomic on the server).

Keys under ``<prefix>``: ``job:<id>`` (a hash of the job's fields, an unset field is absent), ``updated`` (zset
by updated_at), ``active`` (running/writing jobs by lease expiry), ``queued`` (queued jobs by due_at),
``instate:<state>`` (sets, also the counts), ``study:<uid>`` (the study's job ids), ``routing:<study>`` (hash
series -> routing record). The scripts compute key names from the prefix, so the store needs one Redis server
(not a cluster).

What survives what: the job table is only as durable as its Redis. Run it on a server with persistence
(``appendonly yes``) and, to survive a FLUSHALL or loss of the queue's Redis, on another server (or at least
not one that is flushed): the queue is then rebuilt from this table by the reconciler. A job table in the same
Redis as the queue is lost together with it by FLUSHALL (the stored instances and the index are not; the
studies can then be reprocessed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from neuronova.jobs.model import FIELD_NAMES, Job, JobState, RoutingRecord, record_value
from neuronova.jobs.store import Cond, JobStore

_INDEX = """
local function index(p, id, key, old)
  local st = redis.call('HGET', key, 'state')
  if old and old ~= st then redis.call('SREM', p .. ':instate:' .. old, id) end
  redis.call('SADD', p .. ':instate:' .. st, id)
  redis.call('SADD', p .. ':study:' .. redis.call('HGET', key, 'study_uid'), id)
  redis.call('ZADD', p .. ':updated', redis.call('HGET', key, 'updated_at'), id)
  if st == 'running' or st == 'writing' then
    redis.call('ZADD', p .. ':active', redis.call('HGET', key, 'lease_expires_at') or '0', id)
  else
    redis.call('ZREM', p .. ':active', id)
  end
  if st == 'queued' then
    redis.call('ZADD', p .. ':queued', redis.call('HGET', key, 'due_at'), id)
  else
    redis.call('ZREM', p .. ':queued', id)
  end
end
"""

INSERT_LUA = _INDEX + """
local p, id = ARGV[1], ARGV[2]
local key = p .. ':job:' .. id
if redis.call('EXISTS', key) == 1 then return 0 end
for _, f in ipairs(cjson.decode(ARGV[3])) do
  if f[2] ~= cjson.null then redis.call('HSET', key, f[1], f[2]) end
end
index(p, id, key, false)
return 1
"""

UPDATE_LUA = _INDEX + """
local p, id = ARGV[1], ARGV[2]
local key = p .. ':job:' .. id
if redis.call('EXISTS', key) == 0 then return false end
for _, c in ipairs(cjson.decode(ARGV[3])) do
  local v = redis.call('HGET', key, c[1])
  local op = c[2]
  if op == 'eq' then
    if c[3] == cjson.null then
      if v then return false end
    elseif v ~= c[3] then return false end
  elseif op == 'in' then
    local hit = false
    for _, x in ipairs(c[3]) do if v == x then hit = true end end
    if not hit then return false end
  else
    if not v then return false end
    local a, b = tonumber(v), tonumber(c[3])
    if op == 'le' and not (a <= b) then return false end
    if op == 'lt' and not (a < b) then return false end
  end
end
local old = redis.call('HGET', key, 'state')
for _, f in ipairs(cjson.decode(ARGV[4])) do
  if f[2] == cjson.null then redis.call('HDEL', key, f[1]) else redis.call('HSET', key, f[1], f[2]) end
end
for _, f in ipairs(cjson.decode(ARGV[5])) do redis.call('HINCRBY', key, f[1], f[2]) end
index(p, id, key, old)
return redis.call('HGETALL', key)
"""

_BATCH = 200


def _text(name: str, value: Any) -> str | None:
    # Every value travels as text; floats as repr so they round-trip exactly (Lua's tonumber reads them).
    v = record_value(name, value)
    if v is None:
        return None
    return repr(v) if isinstance(v, float) else str(v)


class RedisJobStore(JobStore):
    def __init__(self, url: str, *, prefix: str = "neuronova:jobs") -> None:
        super().__init__()
        self.url = url
        self.prefix = prefix
        self._conn = redis.Redis.from_url(url, decode_responses=True)
        self._insert_script = self._conn.register_script(INSERT_LUA)
        self._update_script = self._conn.register_script(UPDATE_LUA)

    def close(self) -> None:
        self._conn.close()

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _insert(self, job: Job) -> bool:
        fields = [[name, _text(name, getattr(job, name))] for name in FIELD_NAMES]
        return bool(self._insert_script(args=[self.prefix, job.job_id, json.dumps(fields)]))

    def _update(self, job_id: str, *, where: Sequence[Cond], set: Mapping[str, Any],
                incr: Mapping[str, int] | None = None) -> Job | None:
        conds = []
        for name, op, value in where:
            if op == "in":
                conds.append([name, op, [_text(name, v) for v in value]])
            elif op in ("eq", "le", "lt"):
                conds.append([name, op, _text(name, value)])
            else:
                raise ValueError(f"unknown condition operator {op!r}")
        sets = [[name, _text(name, value)] for name, value in set.items()]
        incrs = [[name, int(step)] for name, step in (incr or {}).items()]
        if any(name not in FIELD_NAMES for name, _ in incrs):
            raise ValueError(f"unknown job field in {incrs!r}")
        flat = self._update_script(args=[self.prefix, job_id, json.dumps(conds), json.dumps(sets), json.dumps(incrs)])
        if not flat:
            return None
        return Job.from_record(dict(zip(flat[::2], flat[1::2], strict=True)))

    def _fetch(self, job_ids: Iterable[str]) -> list[Job]:
        ids = list(job_ids)
        if not ids:
            return []
        pipe = self._conn.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._key("job", job_id))
        return [Job.from_record(rec) for rec in pipe.execute() if rec]

    def get(self, job_id: str) -> Job | None:
        rec = self._conn.hgetall(self._key("job", job_id))
        return Job.from_record(rec) if rec else None

    def jobs_of_study(self, study_uid: str) -> list[Job]:
        jobs = [j for j in self._fetch(self._conn.smembers(self._key("study", study_uid))) if j.study_uid == study_uid]
        return sorted(jobs, key=lambda j: (j.series_uid, j.pipeline))

    def list_jobs(self, *, state: JobState | None = None, study_uid: str | None = None, since: float | None = None,
                  after: tuple[float, str] | None = None, limit: int = 100) -> list[Job]:
        def wanted(job: Job) -> bool:
            return ((state is None or job.state == state) and (study_uid is None or job.study_uid == study_uid)
                    and (since is None or job.updated_at >= since)
                    and (after is None or (job.updated_at, job.job_id) > (after[0], after[1])))

        if study_uid is not None:
            jobs = sorted(filter(wanted, self.jobs_of_study(study_uid)), key=lambda j: (j.updated_at, j.job_id))
            return jobs[:limit]
        # Walk the updated_at index from the cursor; within one score Redis orders members by name, the same
        # (updated_at, job_id) order as the cursor, so the first `skip` members at the cursor's score are done.
        cursor: tuple[float, str] = (-math.inf, "")
        if since is not None:
            cursor = (since, "")
        if after is not None and (after[0], after[1]) > cursor:
            cursor = (after[0], after[1])
        out: list[Job] = []
        key = self._key("updated")
        while len(out) < limit:
            score, last_id = cursor
            skip = 0
            if last_id:
                skip = sum(1 for m in self._conn.zrangebyscore(key, score, score) if m <= last_id)
            rows = self._conn.zrangebyscore(key, score, "+inf", start=skip, num=_BATCH, withscores=True)
            if not rows:
                break
            jobs = {j.job_id: j for j in self._fetch(m for m, _ in rows)}
            for member, member_score in rows:
                job = jobs.get(member)
                if job is not None and wanted(job):
                    out.append(job)
                    if len(out) == limit:
                        break
            cursor = (rows[-1][1], rows[-1][0])
            if len(rows) < _BATCH:
                break
        return out

    def _active_with_lease_before(self, t: float) -> list[Job]:
        return self._fetch(self._conn.zrangebyscore(self._key("active"), "-inf", f"({t!r}"))

    def _queued_due_before(self, t: float) -> list[Job]:
        return self._fetch(self._conn.zrangebyscore(self._key("queued"), "-inf", f"({t!r}"))

    def _in_state(self, state: JobState) -> list[Job]:
        jobs = [j for j in self._fetch(self._conn.smembers(self._key("instate", str(state)))) if j.state == state]
        return sorted(jobs, key=lambda j: j.updated_at)

    def set_routing(self, record: RoutingRecord) -> None:
        self._conn.hset(self._key("routing", record.study_uid), record.series_uid, record.to_json())

    def routing_of_study(self, study_uid: str) -> list[RoutingRecord]:
        values = self._conn.hgetall(self._key("routing", study_uid))
        return [RoutingRecord.from_json(values[k]) for k in sorted(values)]

    def counts(self) -> dict[str, int]:
        pipe = self._conn.pipeline(transaction=False)
        for s in JobState:
            pipe.scard(self._key("instate", str(s)))
        return {str(s): int(n) for s, n in zip(JobState, pipe.execute(), strict=True)}
