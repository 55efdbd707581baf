/** State of the plateau schedule; saved in checkpoints. */
export interface PlateauState {
  learningRate: number;
  bestTop1: number;
  epochsSinceBest: number;
  reductions: number;
}

export interface PlateauOptions {
  /** Divide by this when validation top-1 stops improving. @defaultValue 10 */
  factor: number;
  /** Epochs without improvement before a reduction. @defaultValue 1 */
  patience: number;
  /** The paper reduced the rate three times. @defaultValue 3 */
  maxReductions: number;
  /** Smallest top-1 gain that counts as improvement. @defaultValue 1e-4 */
  minDelta: number;
}

export const DEFAULT_PLATEAU: PlateauOptions = { factor: 10, patience: 1, maxReductions: 3, minDelta: 1e-4 };

export function initialPlateau(learningRate: number): PlateauState {
  return { learningRate, bestTop1: -1, epochsSinceBest: 0, reductions: 0 };
}

/**
 * The paper's schedule: lr divided by 10 when validation accuracy stopped
 * improving, at most three times. Pure: returns the next state.
 */
export function stepPlateau(state: PlateauState, valTop1: number, options: Partial<PlateauOptions> = {}): PlateauState {
  const o = { ...DEFAULT_PLATEAU, ...options };
  if (valTop1 > state.bestTop1 + o.minDelta) return { ...state, bestTop1: valTop1, epochsSinceBest: 0 };
  const since = state.epochsSinceBest + 1;
  if (since >= o.patience && state.reductions < o.maxReductions) {
    return { ...state, learningRate: state.learningRate / o.factor, epochsSinceBest: 0, reductions: state.reductions + 1 };
  }
  return { ...state, epochsSinceBest: since };
}
