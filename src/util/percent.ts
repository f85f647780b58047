/** The change from `before` to `after` in percent of `before` (what reports and --json results call *_change_percent). */
export function percentChange(before: number, after: number): number {
  return (100 * (after - before)) / before;
}
