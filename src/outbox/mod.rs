//! Transactional outbox: events recorded atomically with the writes that cause them, and the
//! relay that publishes them to Kafka.
