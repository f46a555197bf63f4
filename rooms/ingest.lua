-- The atomic sequencing step of a room message (one call per message, pipelined by the worker).
--
-- KEYS[1]  {r:<room>}:seq      INCR counter; the last seq assigned in the room
-- KEYS[2]  {r:<room>}:epoch    random id created together with the counter
-- KEYS[3]  {r:<room>}:stream   the hot buffer; entry id <seq>-0, field m = message JSON
-- KEYS[4]  archive stream      the shard's archive stream (or the room's under Cluster)
-- KEYS[5]  {r:<room>}:dd:...   dedupe record of (user, cmid): "<seq> <ts> <id>"
--
-- ARGV[1]  room id               ARGV[2]  pub/sub channel of the room
-- ARGV[3]  new epoch (used only when the room has none)
-- ARGV[4]  message id            ARGV[5]  message JSON after the ts field, e.g. ',"user":..}'
-- ARGV[6]  hot buffer length     ARGV[7]  dedupe TTL in seconds
-- ARGV[8]  seq floor: where a missing counter restarts (the archive's highest seq of the room);
--          "-1" means "not looked up": when the counter is missing the script then writes
--          nothing and returns {-1}, and the caller looks the floor up and calls again
-- ARGV[9]  extra archive fields (JSON object text, e.g. gateway receive time and node)
--
-- Returns {is_new (1/0, or -1: floor needed), seq, ts, epoch, id}. A resend of the same (user, cmid) returns the seq,
-- ts and id of the first call and writes nothing, so a retried message is never delivered twice.
local prev = redis.call('GET', KEYS[5])
local epoch = redis.call('GET', KEYS[2])
if prev then
  local seq, ts, id = string.match(prev, '^(%d+) (%d+) (%S+)$')
  return {0, tonumber(seq), tonumber(ts), epoch or '', id}
end
if not redis.call('GET', KEYS[1]) then
  -- A new room, or one whose counter was lost: continue above the archive's highest seq.
  if ARGV[8] == '-1' then
    return {-1, 0, 0, '', ''}
  end
  local floor = tonumber(ARGV[8])
  local top = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)[1]
  if top then
    floor = math.max(floor, tonumber(string.match(top[1], '^(%d+)')))
  end
  redis.call('SET', KEYS[1], floor)
end
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[2], epoch)
  redis.call('DEL', KEYS[3])
end
local seq = redis.call('INCR', KEYS[1])
local t = redis.call('TIME')
local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local msg = '{"seq":' .. seq .. ',"id":"' .. ARGV[4] .. '","ts":' .. ts .. ARGV[5]
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], seq .. '-0', 'm', msg)
redis.call('XADD', KEYS[4], '*', 'r', ARGV[1], 'e', epoch, 's', seq, 'm', msg, 'x', ARGV[9])
redis.call('SET', KEYS[5], seq .. ' ' .. ts .. ' ' .. ARGV[4], 'EX', ARGV[7])
redis.call('PUBLISH', ARGV[2], seq .. ' ' .. epoch .. ' ' .. msg)
return {1, seq, ts, epoch, ARGV[4]}
