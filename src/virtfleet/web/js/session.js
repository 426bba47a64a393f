// Who is logged in, with which role, and the CSRF token that mutating requests must carry.

const RANK = { viewer: 0, operator: 1, admin: 2 };

export const session = { user: null, role: null, via: null, csrf: null };

export function setSession(me) {
  session.user = me ? me.name : null;
  session.role = me ? me.role : null;
  session.via = me ? me.via : null;
  session.csrf = me ? me.csrf_token || null : null;
}

/** True when the logged-in role is at least `role` (viewer < operator < admin). */
export function can(role) {
  return session.role !== null && (RANK[session.role] ?? -1) >= RANK[role];
}
