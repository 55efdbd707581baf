/**
 * Indices of a subset of `limit` samples spread evenly over `total` (all when
 * limit is 0 or >= total). Sample lists are sorted by class, so the first n
 * would be one class; smoke runs want every class.
 */
export function subsetIds(total: number, limit = 0): number[] {
  if (limit <= 0 || limit >= total) return Array.from({ length: total }, (_, i) => i);
  return Array.from({ length: limit }, (_, i) => Math.floor((i * total) / limit));
}
