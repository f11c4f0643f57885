"""`vrp export`: a fine-tuned run as files other tools run: the stage (`run`), merged Hugging Face weights (`hf`), a
GGUF file (`gguf`), an Ollama Modelfile (`ollama`) and the prompt text outside vrp (`prompts`)."""
