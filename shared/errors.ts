/**
 * One base error with a stable `code`. Messages say what was wrong, what was
 * expected and what came.
 */
export class VggError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A flag, config value or argument is invalid. Entry points exit with code 2. */
export class ConfigError extends VggError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('VGG_ERR_CONFIG', message, options);
  }
}

/** Tensor shapes, layouts or model hashes do not agree. */
export class ShapeError extends VggError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('VGG_ERR_SHAPE', message, options);
  }
}

/** A dataset tree or a single image cannot be read. */
export class DataError extends VggError {
  constructor(code: 'VGG_ERR_DATASET' | 'VGG_ERR_IMAGE', message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** A compute backend cannot be loaded or lacks what is needed. */
export class BackendError extends VggError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('VGG_ERR_BACKEND', message, options);
  }
}

/** A checkpoint is missing, unreadable or does not match the model. */
export class CheckpointError extends VggError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('VGG_ERR_CHECKPOINT', message, options);
  }
}
