// The search syntax of VM lists, one definition for the web UI (and later the CLI, which reads the same table):
//   words        free words match a VM's name (anywhere in it) or one of its IP addresses (from the start)
//   key:value    one field: name:web*  state:running  ip:10.0.  host:node1
//   a,b          several values of one key: any of them (state:running,paused)
//   -term        leave out what the term matches (-state:stopped, -test)
// Every term must match (AND). Case does not matter. `*` is a wildcard; name and host match anywhere without one,
// state exactly, ip from the start.

export class QueryError extends Error {}

const STATES = ["stopped", "starting", "running", "paused", "stopping", "crashed"];

const contains = (text, value) => text.toLowerCase().includes(value);
const startsWith = (text, value) => text.toLowerCase().startsWith(value);

function glob(value) {
  const pattern = value.split("*").map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*");
  return new RegExp(`^${pattern}$`, "i");
}

/** The keys: what each matches in a VM ({name, state, host, addresses}), and how a person reads it. */
export const KEYS = {
  name: { help: "name, anywhere in it (web), or a pattern (web*)", field: (vm) => [vm.name], plain: contains },
  state: { help: `exact state: ${STATES.join(", ")}`, field: (vm) => [vm.state], plain: (text, value) => text === value,
    check: (value) => STATES.includes(value) || value.includes("*") ? null : `unknown state '${value}' (states: ${STATES.join(", ")})` },
  ip: { help: "an IP address, from the start (10.0.)", field: (vm) => vm.addresses || [], plain: startsWith },
  host: { help: "the host it is on, anywhere in the name", field: (vm) => [vm.host || ""], plain: contains },
};

function valueMatcher(key, value) {
  const spec = KEYS[key];
  const problem = spec.check ? spec.check(value) : null;
  if (problem) throw new QueryError(problem);
  if (value.includes("*")) {
    const pattern = glob(value);
    return (vm) => spec.field(vm).some((text) => pattern.test(text));
  }
  return (vm) => spec.field(vm).some((text) => spec.plain(text, value));
}

function term(text) {
  const negate = text.startsWith("-") && text.length > 1;
  const body = negate ? text.slice(1) : text;
  const colon = body.indexOf(":");
  if (colon < 0) {
    const value = body.toLowerCase();
    const name = valueMatcher("name", value);
    const ip = valueMatcher("ip", value);
    const free = (vm) => name(vm) || ip(vm);
    return negate ? (vm) => !free(vm) : free;
  }
  const key = body.slice(0, colon).toLowerCase();
  if (!Object.hasOwn(KEYS, key)) {
    const later = key === "tag" || key === "tags" ? " (VMs have no tags yet)" : "";
    throw new QueryError(`unknown search key '${key}' in '${text}'${later}: use ${Object.keys(KEYS).join(", ")}`);
  }
  const values = body.slice(colon + 1).toLowerCase().split(",").filter(Boolean);
  if (!values.length) throw new QueryError(`'${text}' needs a value after the colon, e.g. ${key}:${key === "state" ? "running" : "web*"}`);
  const any = values.map((value) => valueMatcher(key, value));
  const matches = (vm) => any.some((match) => match(vm));
  return negate ? (vm) => !matches(vm) : matches;
}

/** The predicate for `text` (every term must match); throws QueryError with a message for people. */
export function parseQuery(text) {
  const terms = text.trim().split(/\s+/).filter(Boolean).map(term);
  return (vm) => terms.every((match) => match(vm));
}
