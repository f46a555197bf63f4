-- name: comments_per_minute
-- title: Comments per minute per room
-- description: Messages sequenced in each time bucket (one minute by default), per room.
--   Danmaku, gifts and superchats count; system messages do not. Each (room, seq) counts once
--   (FINAL collapses rows the archiver inserted twice after a crash).
-- params: since_ms, until_ms (sequenced time ts, Unix ms, [since, until)), room ('' = all),
--   bucket_ms (bucket width in ms, e.g. 60000)
-- chart: line x=bucket_ms y=comments series=room
SELECT
    intDiv(ts, %(bucket_ms)s) * %(bucket_ms)s AS bucket_ms,
    room,
    count() AS comments
FROM messages FINAL
WHERE ts >= %(since_ms)s AND ts < %(until_ms)s
  AND (%(room)s = '' OR room = %(room)s)
  AND kind != 'system'
GROUP BY bucket_ms, room
ORDER BY bucket_ms, room
