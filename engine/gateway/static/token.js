// The viewer's token: from `?token=` (then removed from the address bar) or from localStorage.
// The payload is decoded here only to show who is signed in and which controls to offer; the
// gateway verifies the signature, and every permission is checked by the engine.

export const STORAGE_KEY = 'danmaku.token';
export const MODERATOR_ROLES = new Set(['moderator', 'streamer', 'admin']);

function base64UrlDecode(part) {
  const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
  const bin = atob(b64);
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** The JWT's claims, or null when it is not a readable JWT. */
export function decodeToken(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const claims = JSON.parse(base64UrlDecode(parts[1]));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/** What the page needs to know about a token (null token: a guest). */
export function tokenInfo(token, nowMs = Date.now()) {
  if (!token) return { token: null, guest: true };
  const claims = decodeToken(token);
  if (!claims) return { token, guest: false, invalid: true, name: '?', role: 'viewer' };
  const role = typeof claims.role === 'string' ? claims.role : 'viewer';
  const exp = Number.isFinite(claims.exp) ? claims.exp * 1000 : null;
  return {
    token,
    guest: false,
    user: String(claims.sub ?? ''),
    name: String(claims.name ?? claims.sub ?? ''),
    role,
    rooms: Array.isArray(claims.rooms) ? claims.rooms : null,
    expiresAt: exp,
    expired: exp !== null && exp <= nowMs,
    canModerate: MODERATOR_ROLES.has(role),
  };
}

function storage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null; // storage disabled by the browser
  }
}

/** `?token=` first (stripped from the visible URL), else the stored one; null for a guest. */
export function readToken(loc = globalThis.location, history = globalThis.history) {
  const url = new URL(loc.href);
  const fromUrl = url.searchParams.get('token');
  if (fromUrl) {
    url.searchParams.delete('token');
    try {
      history?.replaceState(history.state, '', url.pathname + url.search + url.hash);
    } catch { /* not fatal */ }
    return { token: fromUrl, source: 'url' };
  }
  const stored = storage()?.getItem(STORAGE_KEY);
  return stored ? { token: stored, source: 'storage' } : { token: null, source: null };
}

export function saveToken(token) {
  storage()?.setItem(STORAGE_KEY, token);
}

export function clearToken() {
  storage()?.removeItem(STORAGE_KEY);
}
