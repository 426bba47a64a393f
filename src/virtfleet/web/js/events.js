// Live updates: one EventSource on /api/v1/events, fanned out to the pages that listen.
// The stream has no replay, so listeners of "open" reload what they show whenever it (re)connects.

import { BASE } from "./api.js";

const TYPES = ["vm", "vm-deleted", "vm-event", "job"];
const listeners = new Map();
let source = null;
let statusHandler = () => {};
let live = false;

/** True while the event stream is connected (jobs then need no long-poll to learn how they ended). */
export function isLive() {
  return live;
}

function emit(type, data) {
  for (const listener of listeners.get(type) || []) {
    try {
      listener(data);
    } catch (error) {
      console.error(`listener of ${type} failed`, error);
    }
  }
}

/** Hand a message learnt another way (e.g. a job's end from a GET) to the same listeners as the stream's. */
export function emitLocal(type, data) {
  emit(type, data);
}

/** Listen to one kind of message ("vm", "vm-deleted", "vm-event", "job", or "open"); returns the unsubscribe. */
export function on(type, listener) {
  if (!listeners.has(type)) listeners.set(type, new Set());
  listeners.get(type).add(listener);
  return () => listeners.get(type).delete(listener);
}

export function onStatus(handler) {
  statusHandler = handler;
}

export function connect() {
  if (source) return;
  source = new EventSource(`${BASE}/events`, { withCredentials: true });
  for (const type of TYPES) {
    source.addEventListener(type, (message) => {
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        return;
      }
      emit(type, data);
    });
  }
  source.onopen = () => {
    live = true;
    statusHandler("live");
    emit("open", null);
  };
  // EventSource retries by itself; CLOSED means it gave up (e.g. 401 or no such endpoint).
  source.onerror = () => {
    live = false;
    statusHandler(source && source.readyState === EventSource.CLOSED ? "offline" : "reconnecting");
  };
}

export function disconnect() {
  if (source) source.close();
  source = null;
  live = false;
  statusHandler("offline");
}

/** Collects unsubscribe and cleanup functions of one page, to run them all when the page goes away. */
export function scope() {
  const cleanups = [];
  return {
    on(type, listener) {
      cleanups.push(on(type, listener));
    },
    add(cleanup) {
      cleanups.push(cleanup);
    },
    dispose() {
      while (cleanups.length) {
        try {
          cleanups.pop()();
        } catch (error) {
          console.error("cleanup failed", error);
        }
      }
    },
  };
}
