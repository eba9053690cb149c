// Usage: node trade_bars.mjs TRADES.csv[.gz] INTERVAL_MS [INTERVAL_MS ...]
// Feeds the file's trades, in file order, through tardis-dev's compute() with
// computeTradeBars({kind: 'time', interval}) and prints every trade_bar as one JSON line.
// tardis-dev emits a bar when a later trade falls into a newer bucket, so the last bar of
// each symbol is never emitted (it waits for the next trade).
import fs from 'node:fs'
import zlib from 'node:zlib'
import readline from 'node:readline'
import { compute, computeTradeBars } from 'tardis-dev'

const [file, ...intervals] = process.argv.slice(2)
if (!file || intervals.length === 0) {
  console.error('usage: node trade_bars.mjs TRADES.csv[.gz] INTERVAL_MS [...]')
  process.exit(2)
}

async function* trades() {
  let input = fs.createReadStream(file)
  if (file.endsWith('.gz')) input = input.pipe(zlib.createGunzip())
  const lines = readline.createInterface({ input, crlfDelay: Infinity })
  let header = null
  for await (const line of lines) {
    if (!line) continue
    const cols = line.split(',')
    if (header === null) {
      header = Object.fromEntries(cols.map((c, i) => [c, i]))
      continue
    }
    const ts = Number(cols[header.timestamp])
    const local = Number(cols[header.local_timestamp])
    yield {
      type: 'trade',
      symbol: cols[header.symbol],
      exchange: cols[header.exchange],
      id: cols[header.id],
      price: Number(cols[header.price]),
      amount: Number(cols[header.amount]),
      side: cols[header.side],
      timestamp: new Date(Math.floor(ts / 1000)),
      localTimestamp: new Date(Math.floor(local / 1000)),
    }
  }
}

const factories = intervals.map((i) => computeTradeBars({ kind: 'time', interval: Number(i) }))
const out = []
for await (const m of compute(trades(), ...factories)) {
  if (m.type !== 'trade_bar') continue
  out.push(JSON.stringify({
    exchange: m.exchange, symbol: m.symbol, interval: m.interval,
    open: m.open, high: m.high, low: m.low, close: m.close,
    volume: m.volume, buyVolume: m.buyVolume, sellVolume: m.sellVolume,
    trades: m.trades, vwap: m.vwap,
    openTimestamp: m.openTimestamp.valueOf(), closeTimestamp: m.closeTimestamp.valueOf(),
    timestamp: m.timestamp.valueOf(),
  }))
  if (out.length >= 10000) { process.stdout.write(out.join('\n') + '\n'); out.length = 0 }
}
if (out.length) process.stdout.write(out.join('\n') + '\n')
