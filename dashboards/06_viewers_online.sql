-- name: viewers_online
-- title: Viewers online over time
-- description: Viewers per room and time bucket: each gateway's highest sample in the bucket,
--   summed over the gateways (every gateway samples its own viewers every viewers_sample_ms).
-- params: since_ms, until_ms (sample time ts, Unix ms, [since, until)), room ('' = all),
--   bucket_ms (bucket width in ms)
-- chart: line x=bucket_ms y=online series=room
SELECT
    bucket_ms,
    room,
    sum(online) AS online
FROM
(
    SELECT intDiv(ts, %(bucket_ms)s) * %(bucket_ms)s AS bucket_ms, room, gateway,
           max(online) AS online
    FROM viewers_online FINAL
    WHERE ts >= %(since_ms)s AND ts < %(until_ms)s
      AND (%(room)s = '' OR room = %(room)s)
    GROUP BY bucket_ms, room, gateway
)
GROUP BY bucket_ms, room
ORDER BY bucket_ms, room
