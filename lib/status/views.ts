// Status application layer: the JSON views the status API and the dashboard share (no secrets in any of them).
import { CONFIG_FIELDS, CONFIG_KEYS, externalName } from '../domain/config.js';
import type { ConfigChange } from '../domain/ports.js';
import type { RetreatRecord, RetreatState, RetreatTransition } from '../domain/retreat.js';

/** A config change as operators read it: external field name, values in the field's external unit. */
export interface ConfigChangeView {
  at: number;
  by: string;
  field: string;
  from: unknown;
  to: unknown;
}

/** History entries are stored in the admin API's names and units already (seconds for `*_s`). */
export const changeView = (c: ConfigChange): ConfigChangeView => ({
  at: c.at,
  by: c.by,
  field: c.field,
  from: c.from,
  to: c.to,
});

/** The retreat record without its bookkeeping fields. */
export interface RetreatView {
  state: RetreatState;
  effectiveRpm: number;
  baseRpm: number;
  /** When the current state was entered. */
  since: number;
  /** Latest first. */
  transitions: RetreatTransition[];
}

/** How many retreat transitions the views carry. */
export const VIEW_TRANSITIONS = 10;

export const retreatView = (r: RetreatRecord): RetreatView => ({
  state: r.state,
  effectiveRpm: r.effectiveRpm,
  baseRpm: r.baseRpm,
  since: r.since,
  transitions: r.transitions.slice(0, VIEW_TRANSITIONS),
});

/** One editable field as the admin panel describes it. */
export interface ConfigFieldView {
  name: string;
  kind: 'int' | 'number' | 'bool' | 'enum' | 'weights' | 'list' | 'upstreams';
  /** Bounds in the external unit (seconds for `*_s`). */
  min?: number;
  max?: number;
  values?: readonly string[];
  doc: string;
}

/** Field metadata for forms, in external names and units. */
export const configFieldViews = (): ConfigFieldView[] =>
  CONFIG_KEYS.map((key) => {
    const spec = CONFIG_FIELDS[key];
    const scale = spec.seconds ? 1000 : 1;
    return {
      name: externalName(key),
      kind: spec.kind,
      ...(spec.min !== undefined ? { min: spec.min / scale } : {}),
      ...(spec.max !== undefined ? { max: spec.max / scale } : {}),
      ...(spec.values ? { values: spec.values } : {}),
      doc: spec.doc,
    };
  });
