-- Set or lift one sanction of a user in a room, and record the action in the audit log, atomically.
--
-- KEYS[1]  {r:<room>}:mod:x:<user>   sanctions (hash: ban | mute | shadow -> until ms, "0" = no end)
-- KEYS[2]  the audit stream          danmaku:audit on the room's shard ({r:<room>}:audit in Cluster)
--
-- ARGV[1]  the field: ban, mute or shadow
-- ARGV[2]  until (Unix ms), "0" for no end, "-1" to lift the sanction
-- ARGV[3]  the audit stream's approximate maximum length
-- ARGV[4..] the audit entry's field/value pairs
--
-- The hash lives exactly as long as its longest sanction (no expiry while one has no end), so
-- a timed mute cleans up after itself. Returns 1 when the field changed, 0 when it was already so.
local before = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '-1' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local all = redis.call('HGETALL', KEYS[1])
local forever, last = false, 0
for i = 2, #all, 2 do
  local u = tonumber(all[i])
  if u == 0 then forever = true elseif u > last then last = u end
end
if #all > 0 then
  if forever then
    redis.call('PERSIST', KEYS[1])
  else
    redis.call('PEXPIREAT', KEYS[1], last)
  end
end
local entry = {}
for i = 4, #ARGV do entry[#entry + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(entry))
if (before or '-1') == ARGV[2] then return 0 end
return 1
