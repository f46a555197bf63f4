-- name: moderator_actions
-- title: Moderator actions by actor
-- description: Moderator, streamer and admin actions in the window (the audit log), per actor:
--   how many, in how many rooms, how many were sanctions (mute, ban, shadowban) or kicks, and
--   the actor's highest role in them. Actions on no room (revoke, a global kick) count for the
--   window but not as a room, and are left out when a room is chosen. Ties go by actor.
-- params: since_ms, until_ms (action time ts, Unix ms, [since, until)), room ('' = all),
--   limit (actors listed)
-- chart: bar x=actor y=actions
SELECT
    actor,
    count() AS actions,
    uniqExactIf(room, room != '') AS rooms,
    countIf(action IN ('mute', 'ban', 'shadowban')) AS sanctions,
    countIf(action = 'kick') AS kicks,
    multiIf(countIf(role = 'admin') > 0, 'admin', countIf(role = 'streamer') > 0, 'streamer',
            'moderator') AS role
FROM audit FINAL
WHERE ts >= %(since_ms)s AND ts < %(until_ms)s
  AND (%(room)s = '' OR room = %(room)s)
GROUP BY actor
ORDER BY actions DESC, actor
LIMIT %(limit)s
