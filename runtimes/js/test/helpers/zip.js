// A minimal zip writer (stored or deflated members), to build .npz files as np.savez and
// np.savez_compressed do.

/**
 * @param {Array<[string, Uint8Array, 0|8]>} members name, bytes, method (0 stored, 8 deflate)
 * @param {(b: Uint8Array) => Uint8Array} [deflateRaw] required for method 8
 */
export function storedZip(members, deflateRaw) {
  const locals = [];
  const centrals = [];
  let offset = 0;
  for (const [name, data, method] of members) {
    const body = method === 8 ? Buffer.from(deflateRaw(data)) : Buffer.from(data);
    const crc = crc32(data);
    const nameB = Buffer.from(name);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0); local.writeUInt16LE(20, 4); local.writeUInt16LE(method, 8); local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(body.length, 18); local.writeUInt32LE(data.length, 22); local.writeUInt16LE(nameB.length, 26);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0); central.writeUInt16LE(20, 4); central.writeUInt16LE(20, 6); central.writeUInt16LE(method, 10);
    central.writeUInt32LE(crc, 16); central.writeUInt32LE(body.length, 20); central.writeUInt32LE(data.length, 24);
    central.writeUInt16LE(nameB.length, 28); central.writeUInt32LE(offset, 42);
    locals.push(local, nameB, body);
    centrals.push(central, nameB);
    offset += 30 + nameB.length + body.length;
  }
  const cd = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0); end.writeUInt16LE(members.length, 8); end.writeUInt16LE(members.length, 10);
  end.writeUInt32LE(cd.length, 12); end.writeUInt32LE(offset, 16);
  return new Uint8Array(Buffer.concat([...locals, cd, end]));
}

/** @param {Uint8Array} buf */
export function crc32(buf) {
  let c = ~0;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}
