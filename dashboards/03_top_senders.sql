-- name: top_senders
-- title: Top senders
-- description: Users by messages sequenced in the window (gifts and superchats included,
--   system messages excluded), with their latest display name, the rooms they wrote in, and
--   how many of their messages were gifts and superchats. Ties go by user id.
-- params: since_ms, until_ms (sequenced time ts, Unix ms, [since, until)), room ('' = all),
--   limit (users listed)
-- chart: bar x=user y=messages
SELECT
    user,
    argMax(name, ts) AS name,
    count() AS messages,
    uniqExact(room) AS rooms,
    countIf(kind = 'gift') AS gifts,
    countIf(kind = 'superchat') AS superchats
FROM messages FINAL
WHERE ts >= %(since_ms)s AND ts < %(until_ms)s
  AND (%(room)s = '' OR room = %(room)s)
  AND kind != 'system'
GROUP BY user
ORDER BY messages DESC, user
LIMIT %(limit)s
