// Domain tests: v2 config rules — waits that fit API Gateway's idle cut, the priority policy fields, the slack.
import { describe, expect, it } from 'vitest';
import {
  API_GATEWAY_IDLE_MS,
  applyConfigPatch,
  configFromEnv,
  DEFAULT_CONFIG,
  nonStreamingWaitCapMs,
  validateConfig,
} from '../../lib/domain/config.js';
import { ValidationError } from '../../lib/domain/errors.js';

describe('a non-streaming wait plus the upstream call fits under the 5-minute idle cut', () => {
  it('the defaults fit', () => {
    expect(validateConfig({ ...DEFAULT_CONFIG })).toBeTruthy();
    expect(DEFAULT_CONFIG.maxWaitMs + DEFAULT_CONFIG.requestTimeoutMs).toBeLessThan(API_GATEWAY_IDLE_MS);
  });

  it.each([
    // max_wait_s, request_timeout_s → accepted?
    [170, 120, true],
    [175, 120, true],
    [176, 120, false],
    [240, 120, false],
    [60, 235, true],
    [60, 240, false],
  ])('max_wait_s %i + request_timeout_s %i → valid: %s', (wait, timeout, ok) => {
    const patch = () => applyConfigPatch(DEFAULT_CONFIG, { max_wait_s: wait, request_timeout_s: timeout });
    if (ok) expect(patch().maxWaitMs).toBe(wait * 1000);
    else expect(patch).toThrow(/must not exceed 295/);
  });

  it('is checked at start too (env)', () => {
    expect(() => configFromEnv({ SLUICE_MAX_WAIT_S: '240' })).toThrow(ValidationError);
  });

  it.each([
    // max wait, request timeout → cap on a non-streaming wait
    [170_000, 120_000, 170_000],
    [240_000, 120_000, 175_000],
    [240_000, 299_000, 0],
  ])('cap(max wait %i, timeout %i) = %i', (maxWaitMs, requestTimeoutMs, cap) => {
    expect(nonStreamingWaitCapMs({ maxWaitMs, requestTimeoutMs })).toBe(cap);
  });
});

describe('priority policy fields', () => {
  it('defaults to strict with weights 8:4:2:1', () => {
    expect(DEFAULT_CONFIG).toMatchObject({ priorityPolicy: 'strict', priorityWeights: '8:4:2:1' });
  });

  it.each([
    [{ priority_policy: 'weighted', priority_weights: '4:3:2:1' }, 'weighted', '4:3:2:1'],
    [{ priority_weights: [16, 8, 4, 1] }, 'strict', '16:8:4:1'],
    [{ priority_weights: ' 2 : 2 : 1 : 1 ' }, 'strict', '2:2:1:1'],
  ])('PATCH %o', (patch, policy, weights) => {
    expect(applyConfigPatch(DEFAULT_CONFIG, patch)).toMatchObject({
      priorityPolicy: policy,
      priorityWeights: weights,
    });
  });

  it.each([
    [{ priority_policy: 'fair' }, /must be one of strict, weighted/],
    [{ priority_weights: '8:4:2' }, /must be four integers/],
    [{ priority_weights: '8:4:0:1' }, /must be four integers/],
  ])('refuses %o', (patch, message) => {
    expect(() => applyConfigPatch(DEFAULT_CONFIG, patch)).toThrow(message);
  });

  it('env: SLUICE_PRIORITY_POLICY and SLUICE_PRIORITY_WEIGHTS', () => {
    expect(
      configFromEnv({ SLUICE_PRIORITY_POLICY: 'weighted', SLUICE_PRIORITY_WEIGHTS: '3:2:1:1' }),
    ).toMatchObject({ priorityPolicy: 'weighted', priorityWeights: '3:2:1:1' });
  });
});

describe('grant slack', () => {
  it('defaults to 1 s and is a config value (env in seconds)', () => {
    expect(DEFAULT_CONFIG.grantSlackMs).toBe(1_000);
    expect(configFromEnv({ SLUICE_GRANT_SLACK_S: '1.5' }).grantSlackMs).toBe(1_500);
    // Below the ingress's own staleness bound it would be unsafe until the ingress reads it (phase 2).
    expect(() => configFromEnv({ SLUICE_GRANT_SLACK_S: '0.5' })).toThrow(/between 1 and 60/);
  });
});
