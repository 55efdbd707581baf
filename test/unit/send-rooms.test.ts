import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeBf16, encodeBf16Scalar } from '../../shared/half.ts';
import { FloatArena } from '../../shared/simd.ts';
import { CHUNK_FLOATS } from '../../shared/wire-protocol.ts';
import { allowSendRooms, sendRoomFor } from '../../worker/arena-rooms.ts';
import { wave } from '../helpers/numeric.ts';

describe('16-bit send rooms in the gradient\'s arena', () => {
  test('rooms come from the arena while it has room, then plain Buffers; encoding into either stays possible (the arena keeps its staging room)', () => {
    const floats = CHUNK_FLOATS;
    // The gradient and room for two rooms and the margin: the third room must be a plain Buffer.
    const arena = new FloatArena(floats + (2 * (2 * CHUNK_FLOATS + 256) + (8 << 20)) / 4, 1, { shared: true });
    const gradient = arena.alloc(floats);
    gradient.set(wave(floats, 9));
    assert.equal(sendRoomFor(gradient).buffer === arena.memory.buffer, false, 'not an arena that allows rooms: a plain Buffer');
    allowSendRooms(arena);
    const rooms = [sendRoomFor(gradient), sendRoomFor(gradient), sendRoomFor(gradient)];
    assert.deepEqual(rooms.map((r) => r.buffer === arena.memory.buffer), [true, true, false]);
    const expected = new Uint16Array(floats);
    encodeBf16Scalar(gradient, expected);
    for (const room of rooms) {
      const codes = new Uint16Array(room.buffer, room.byteOffset + 256, floats);
      encodeBf16(gradient, codes); // into the plain Buffer: through the arena's staging room
      assert.deepEqual(codes, expected);
    }
  });
});
