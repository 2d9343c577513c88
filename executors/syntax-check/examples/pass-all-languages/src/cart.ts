export interface Item {
  name: string;
  price: number;
  quantity?: number;
}

export function total(items: readonly Item[]): number {
  return items.reduce((sum, item) => sum + item.price * (item.quantity ?? 1), 0);
}
