"""The clients that send intents and wait for their replies: `IntentusClient` (blocking, any
number of threads) and `AsyncIntentusClient` (asyncio). Both build requests and match replies
the same way (`calls`, `intents`); only how they wait differs. Their connections are in
`worker.amqp`."""
