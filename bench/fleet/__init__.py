"""Fleet simulator: fake vLLM replicas with a prefix cache, a seeded RAG trace, and its
replay through the service's routing policies and through vllm-router (docs/fleet-simulator.md).
"""
