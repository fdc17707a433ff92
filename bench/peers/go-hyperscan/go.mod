module benchpeers/go-hyperscan

go 1.23

require (
	benchpeers/gopeer v0.0.0
	github.com/flier/gohs v1.2.2
)

require (
	github.com/klauspost/compress v1.15.9 // indirect
	github.com/pierrec/lz4/v4 v4.1.15 // indirect
	github.com/segmentio/kafka-go v0.4.51 // indirect
)

replace benchpeers/gopeer => ../gopeer
