-- name: rooms_by_peak
-- title: Rooms by peak activity
-- description: For each room, its busiest time bucket (comments in it, and when it began) and
--   its total in the window; busiest rooms first. Ties on the peak go to the earlier bucket.
--   Danmaku, gifts and superchats count; system messages do not.
-- params: since_ms, until_ms (sequenced time ts, Unix ms, [since, until)), room ('' = all),
--   bucket_ms (bucket width in ms), limit (rooms listed)
-- chart: bar x=room y=peak_per_bucket
SELECT
    room,
    max(comments) AS peak_per_bucket,
    argMax(bucket_ms, (comments, -toInt64(bucket_ms))) AS peak_at_ms,
    sum(comments) AS total
FROM
(
    SELECT room, intDiv(ts, %(bucket_ms)s) * %(bucket_ms)s AS bucket_ms, count() AS comments
    FROM messages FINAL
    WHERE ts >= %(since_ms)s AND ts < %(until_ms)s
      AND (%(room)s = '' OR room = %(room)s)
      AND kind != 'system'
    GROUP BY room, bucket_ms
)
GROUP BY room
ORDER BY peak_per_bucket DESC, total DESC, room
LIMIT %(limit)s
