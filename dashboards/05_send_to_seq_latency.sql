-- name: send_to_seq_latency
-- title: Send-to-sequence latency percentiles
-- description: Per time bucket, the time from a gateway receiving a send (rt) to the message
--   being sequenced (ts), in ms: exact 50th, 90th and 99th percentiles and the maximum.
--   Messages without a receive time (rt = 0) are left out; clock skew between a gateway and
--   Redis never yields a negative latency (clamped at 0).
-- params: since_ms, until_ms (sequenced time ts, Unix ms, [since, until)), room ('' = all),
--   bucket_ms (bucket width in ms)
-- chart: line x=bucket_ms y=p50_ms,p90_ms,p99_ms
SELECT
    intDiv(ts, %(bucket_ms)s) * %(bucket_ms)s AS bucket_ms,
    count() AS messages,
    quantileExact(0.5)(latency_ms) AS p50_ms,
    quantileExact(0.9)(latency_ms) AS p90_ms,
    quantileExact(0.99)(latency_ms) AS p99_ms,
    max(latency_ms) AS max_ms
FROM
(
    SELECT ts, greatest(toInt64(ts) - toInt64(rt), toInt64(0)) AS latency_ms
    FROM messages FINAL
    WHERE ts >= %(since_ms)s AND ts < %(until_ms)s
      AND (%(room)s = '' OR room = %(room)s)
      AND rt > 0
)
GROUP BY bucket_ms
ORDER BY bucket_ms
