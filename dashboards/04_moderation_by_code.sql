-- name: moderation_by_code
-- title: Moderation outcomes by code
-- description: Messages refused by the room's moderation rules before sequencing, by nack code
--   (muted, banned, filtered: a word or a duplicate, rate_limited: slow mode or a rate bucket,
--   unauthorized: the allow list): how many, from how many users, in how many rooms. The worker
--   records each refusal (stream danmaku:modout) and the archiver copies it here; sends the
--   basic checks refuse (too_long, bad_request, ...) are not recorded.
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
