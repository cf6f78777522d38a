// Typed errors, mirroring dualrate's Python ones: each carries the one-line message a CLI prints.

/** Any user-facing dualrate error (bad bundle, bad spec, bad input, non-finite output). */
export class DualrateError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = 'DualrateError';
  }
  /** The process exit code of the CLI for this error (2 = bad input, 1 = numerical failure). */
  get exitCode() {
    return 2;
  }
}

/** A bundle that is incomplete, tampered with or unreadable (manifest, hashes, files). */
export class BundleError extends DualrateError {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = 'BundleError';
  }
}

/** A spec.json this runtime cannot run: unknown version, a field out of range. */
export class SpecError extends DualrateError {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = 'SpecError';
  }
}

/** Input from the caller (conditioning, seed, options) that does not fit the spec. */
export class BadInputError extends DualrateError {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = 'BadInputError';
  }
}

/** NaN or Inf produced by a graph; the message names the graph (and the step). */
export class NonFiniteError extends DualrateError {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = 'NonFiniteError';
  }
  get exitCode() {
    return 1;
  }
}
