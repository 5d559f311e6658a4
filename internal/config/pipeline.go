package config

import (
	"fmt"
	"strconv"
)

// redisPipelineField is redis_pipeline: whether the Redis store pipelines
// the scripts of concurrent calls (redisx.AutoPipeline).
func redisPipelineField() field {
	return field{
		key: "redis_pipeline", typ: "bool", def: "true", inFile: true,
		usage: "send the Redis scripts of concurrent calls together as pipelines, which costs Redis less CPU per call; a lone call still goes out at once (true or false)",
		set: func(c *Config, s string) error {
			b, err := strconv.ParseBool(s)
			if err != nil {
				return fmt.Errorf("must be true or false, got %s", quoteValue(s))
			}
			c.RedisPipeline = b
			return nil
		},
	}
}
