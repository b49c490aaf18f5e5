/** Small helpers on lists. */

/** The items without repeats, in their first order. */
export function unique<T>(items: T[]): T[] {
  return [...new Set(items)];
}
