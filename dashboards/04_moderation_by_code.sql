-- name: moderation_by_code
-- title: Moderation outcomes by code
-- description: Messages refused before sequencing, by nack code (rate_limited, muted, banned,
--   filtered, too_long, ...): how many, from how many users, in how many rooms.
-- params: since_ms, until_ms (refusal time ts, Unix ms, [since, until)), room ('' = all)
-- chart: bar x=code y=rejected
SELECT
    code,
    count() AS rejected,
    uniqExact(user) AS users,
    uniqExact(room) AS rooms
FROM moderation FINAL
WHERE ts >= %(since_ms)s AND ts < %(until_ms)s
  AND (%(room)s = '' OR room = %(room)s)
GROUP BY code
ORDER BY rejected DESC, code
