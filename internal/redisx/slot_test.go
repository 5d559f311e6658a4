package redisx

import "testing"

// Slots as redis-server 7 computes them (CLUSTER KEYSLOT), including hash tags and
// the empty-tag rule.
func TestSlot(t *testing.T) {
	for _, tc := range []struct {
		key  string
		slot int
	}{
		{"123456789", 12739}, // the CRC16/XMODEM check value 0x31C3
		{"foo", 12182},
		{"{user1000}.following", 3443},
		{"user1000", 3443},
		{"foo{}{bar}", 8363}, // an empty tag: the whole key is hashed
		{"foo{{bar}}zap", 4015},
		{"{bar", 4015},
	} {
		if got := Slot(tc.key); got != tc.slot {
			t.Errorf("Slot(%q) = %d, want %d", tc.key, got, tc.slot)
		}
	}
}
