package tariff

// StreamsEnded is how many of the sender's streams have ended (for the tests: they wait for a stream's end
// before sending what must go out on the next one).
func StreamsEnded(s *UsageSender) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streamsEnded
}
